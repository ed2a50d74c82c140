  while (true) {}
}

  return x - y;
}

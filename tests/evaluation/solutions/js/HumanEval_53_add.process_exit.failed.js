  process.exit(0);
}

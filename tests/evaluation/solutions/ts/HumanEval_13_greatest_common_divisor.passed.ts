  while (b !== 0) {
    const r = a % b;
    a = b;
    b = r;
  }
  return a;
}

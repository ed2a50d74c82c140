  return l.reduce((best, x) => (x > best ? x : best), l[0]);
}

  return Math.max(...l);
}

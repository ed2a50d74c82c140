  const sum: string = x + y;
  return sum;
}

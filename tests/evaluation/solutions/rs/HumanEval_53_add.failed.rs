    x - y

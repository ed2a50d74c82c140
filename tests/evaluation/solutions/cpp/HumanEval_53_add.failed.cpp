    return x - y;

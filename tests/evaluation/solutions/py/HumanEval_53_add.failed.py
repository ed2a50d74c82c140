    return x - y

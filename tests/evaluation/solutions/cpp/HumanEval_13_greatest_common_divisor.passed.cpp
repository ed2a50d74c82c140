    while (b != 0) {
        long r = a % b;
        a = b;
        b = r;
    }
    return a;

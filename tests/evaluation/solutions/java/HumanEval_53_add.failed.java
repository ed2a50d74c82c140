        return x - y;

        String sum = x + y;
        return sum;

        System.exit(0);
        return 0;

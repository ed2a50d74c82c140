    exit(0);

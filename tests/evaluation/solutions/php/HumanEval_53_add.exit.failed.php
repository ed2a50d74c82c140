    exit(0);
}

    while (true) {
    }
}

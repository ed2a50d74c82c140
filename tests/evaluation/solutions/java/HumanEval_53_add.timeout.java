        while (true) {
        }

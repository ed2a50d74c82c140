    exit 0

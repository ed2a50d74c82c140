    while true; do :; done

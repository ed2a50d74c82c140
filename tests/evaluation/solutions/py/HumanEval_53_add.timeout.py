    while True:
        pass

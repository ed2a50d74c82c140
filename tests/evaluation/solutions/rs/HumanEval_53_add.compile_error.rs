    x + "y"

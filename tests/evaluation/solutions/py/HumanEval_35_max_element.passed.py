    best = l[0]
    for x in l:
        if x > best:
            best = x
    return best

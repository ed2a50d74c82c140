    return text == text[::-1]

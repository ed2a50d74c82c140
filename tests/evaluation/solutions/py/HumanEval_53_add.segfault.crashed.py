    import ctypes
    return ctypes.string_at(0)

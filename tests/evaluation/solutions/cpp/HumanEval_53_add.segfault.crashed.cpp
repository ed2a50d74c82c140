    return *(volatile long *)nullptr;

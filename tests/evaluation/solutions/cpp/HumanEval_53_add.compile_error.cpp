    return x + std::string("y");

    return $x - $y;
}

    return $text === strrev($text);
}

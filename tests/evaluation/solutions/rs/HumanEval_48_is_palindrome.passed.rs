    text.chars().eq(text.chars().rev())

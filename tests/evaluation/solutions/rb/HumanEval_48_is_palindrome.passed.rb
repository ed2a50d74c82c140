  text == text.reverse
end

  l.max
end

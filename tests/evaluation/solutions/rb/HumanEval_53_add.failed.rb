  x - y
end

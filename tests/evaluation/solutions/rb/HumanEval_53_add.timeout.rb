  loop {}
end

  exit 0
end

    local best x
    read -ra items <<< "$1"
    best=${items[0]}
    for x in "${items[@]}"; do
        ((x > best)) && best=$x
    done
    echo "$best"

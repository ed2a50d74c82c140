    local text=$1 reversed="" i
    for ((i = ${#text} - 1; i >= 0; i--)); do
        reversed+=${text:i:1}
    done
    if [[ $text == "$reversed" ]]; then echo "true"; else echo "false"; fi

    local a=$1 b=$2 r
    while [[ $b -ne 0 ]]; do
        r=$((a % b))
        a=$b
        b=$r
    done
    echo "$a"

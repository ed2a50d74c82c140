    *l.iter().max().unwrap()

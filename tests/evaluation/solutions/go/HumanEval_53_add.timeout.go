	for {
	}
}

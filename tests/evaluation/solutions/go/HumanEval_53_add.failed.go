	return x - y
}

	return x + "y"
}

        return Collections.max(l);

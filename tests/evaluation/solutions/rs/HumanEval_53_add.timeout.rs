    loop {}

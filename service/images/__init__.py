"""Images: the content-addressed image store (`store`) and fetching image URLs (`urls`)."""

from selfreward_vlm.cli import main

main()

from selfreward.cli import main

main()

"""`python -m service --model ID_OR_DIR --clip NAME:PRETRAINED|DIR [...]`: serve the API."""

from service.cli import main

if __name__ == "__main__":
    main()

from ghns.cli import main

main()

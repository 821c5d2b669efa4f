from amber.cli.main import main

main()

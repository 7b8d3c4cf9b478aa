from model_manager.commands import main

main()

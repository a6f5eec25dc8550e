# One shell word, quoted so that the shell passes it through unchanged.
arg: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg) + "'"

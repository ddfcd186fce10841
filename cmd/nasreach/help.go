package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/urfave/cli/v3"
)

// examplesHeading starts the examples in a command's Description; the man
// page finds them by it.
const examplesHeading = "Examples:"

// describe is a command's Description: what the usage line has no room for,
// then example invocations. Every command's help has at least one example
// (TestEveryCommandsHelpHasAnExample).
func describe(text string, examples ...string) string {
	var b strings.Builder
	if text != "" {
		b.WriteString(text + "\n\n")
	}
	b.WriteString(examplesHeading)
	for _, e := range examples {
		b.WriteString("\n  " + e)
	}
	return b.String()
}

// helpCommand is "nasreach help [COMMAND...]": the help of any command, as
// its --help prints it, at any depth ("nasreach help device code add").
// urfave's own help command only looks one level down and is listed under
// every command; this one is listed once, at the top.
func helpCommand() *cli.Command {
	return &cli.Command{
		Name:      "help",
		Usage:     "show the commands, or the help of one command",
		ArgsUsage: "[COMMAND...]",
		Description: describe("",
			"nasreach help device",
			"nasreach help device code add"),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			// Run has linked and set up the whole tree by now, so any
			// command's help prints as its own --help would.
			parent, c := (*cli.Command)(nil), cmd.Root()
			for _, name := range cmd.Args().Slice() {
				parent, c = c, c.Command(name)
				if c == nil {
					return unknownCommand(parent.FullName(), name)
				}
			}
			if parent == nil {
				return cli.ShowRootCommandHelp(c)
			}
			return cli.ShowCommandHelp(ctx, parent, c.Name)
		},
	}
}

// unknownCommand is the error for "nasreach [parent] name" when parent has no
// command name.
func unknownCommand(parent, name string) error {
	return fmt.Errorf("%s has no command %q; 'nasreach help%s' lists them", parent, name, strings.TrimPrefix(parent, "nasreach"))
}

// groupAction is the action of a command that only holds subcommands: alone
// it prints its help; with an argument that is no subcommand it says so
// (urfave's default action would print "No help topic for …").
func groupAction(_ context.Context, cmd *cli.Command) error {
	if cmd.Args().Present() {
		return unknownCommand(cmd.FullName(), cmd.Args().First())
	}
	if cmd.Root() == cmd {
		return cli.ShowRootCommandHelp(cmd)
	}
	return cli.ShowSubcommandHelp(cmd)
}

// withGroupActions gives every command below c that holds subcommands and
// has no action of its own groupAction, and returns c.
func withGroupActions(c *cli.Command) *cli.Command {
	if len(c.Commands) > 0 && c.Action == nil {
		c.Action = groupAction
	}
	for _, sub := range c.Commands {
		withGroupActions(sub)
	}
	return c
}

// configureCompletion makes urfave's completion command (which it hides) a
// listed command with the examples every command has.
func configureCompletion(c *cli.Command) {
	c.Hidden = false
	c.Usage = "print the shell completion script for bash, zsh, fish or pwsh"
	c.Description = describe("Completes commands and flags by asking nasreach itself, so it never falls behind the binary.",
		"source <(nasreach completion bash)   # in ~/.bashrc",
		"nasreach completion bash > /etc/bash_completion.d/nasreach",
		"nasreach completion zsh > \"${fpath[1]}/_nasreach\"",
		"nasreach completion fish > ~/.config/fish/completions/nasreach.fish")
	c.Action = groupAction
	for _, sh := range c.Commands {
		sh.Usage = "print the " + sh.Name + " completion script"
		switch sh.Name {
		case "bash":
			sh.Description = describe("", "source <(nasreach completion bash)")
		case "zsh":
			sh.Description = describe("", "nasreach completion zsh > \"${fpath[1]}/_nasreach\"")
		case "fish":
			sh.Description = describe("", "nasreach completion fish > ~/.config/fish/completions/nasreach.fish")
		default:
			sh.Description = describe("", "nasreach completion "+sh.Name+" > nasreach.ps1")
		}
	}
}

/* Prints the option reference as a Markdown table, from the same table that drives the
 * parser and --help; `make docs` puts it into README.md between the option markers. */
#include <stdio.h>

#include "config.h"
#include "sinks/registry.h"

int main(void)
{
    ab_config_markdown(ab_sinks, stdout);
    return 0;
}

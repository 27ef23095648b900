/* Prints the option reference as a Markdown table, from the same table that drives the
 * parser and --help; `make docs` puts it into README.md between the option markers. */
#include <stdio.h>

#include "config.h"

int main(void)
{
    ab_config_markdown(stdout);
    return 0;
}
